"""A `wasi:http@0.3.0` service in Python (componentize-py 0.25.1): an async handler.

- `GET /py3/hello`: a greeting naming the path.
- `POST /py3/echo`: the request body back, read and written as streams.
"""

from componentize_py_async_support import spawn
from componentize_py_types import Ok
from wit_world import byte_stream, exports
from wit_world import result_option_wasi_http_types_fields_wasi_http_types_error_code_future as trailers_future
from wit_world import result_unit_wasi_http_types_error_code_future as unit_future
from wit_world.imports.wasi_http_types import Fields, Request, Response


def respond(status: int, body: bytes) -> Response:
    tx, rx = byte_stream()
    trailers_tx, trailers_rx = trailers_future(lambda: Ok(None))
    response, _sent = Response.new(
        Fields.from_list([("content-type", b"text/plain")]), rx, trailers_rx
    )
    response.set_status_code(status)

    async def write() -> None:
        with tx:
            await tx.write_all(body)
        await trailers_tx.write(Ok(None))

    spawn(write())
    return response


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        path = request.get_path_with_query() or "/"
        if path.startswith("/py3/echo"):
            _done_tx, done_rx = unit_future(lambda: Ok(None))
            contents, _trailers = Request.consume_body(request, done_rx)
            received = b""
            with contents:
                while not contents.writer_dropped:
                    received += await contents.read(16384)
            return respond(200, received)
        return respond(200, f"Hello from Python on wasi:http 0.3! You asked for {path}\n".encode())
