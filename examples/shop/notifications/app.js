// The shop's notifications service, in JavaScript. It keeps the recent order events it
// receives on `shop.orders.>` (a durable subscription) in its own `notifications` bucket, and serves them at
// `GET /notifications` (newest last, at most 20).
//
// Built into a component by componentize-js (`npm run build`), for the
// `weft:platform/service` world: it exports both `wasi:http/incoming-handler` and
// `wasmcloud:messaging/handler`.

import { Fields, OutgoingBody, OutgoingResponse, ResponseOutparam } from 'wasi:http/types@0.2.12';
import { open } from 'wasi:keyvalue/store@0.2.0-draft';
import { increment } from 'wasi:keyvalue/atomics@0.2.0-draft';
import { currentDelivery } from 'weft:platform/events@0.1.0';

const BUCKET = 'notifications';
const RECENT = 20;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

export const handler = {
  // Each event gets its own key from an atomic sequence, so concurrent instances
  // never overwrite each other. The export returns `result<_, string>`: throwing a
  // string is how JavaScript returns the `err` case (throwing an Error object traps).
  handleMessage(message) {
    let order;
    try {
      order = JSON.parse(decoder.decode(message.body));
    } catch (e) {
      throw `event on ${message.subject} is not JSON: ${e}`;
    }
    const bucket = open(BUCKET);
    // At least once: a redelivered event (its handler failed, or its host stopped after
    // storing it) carries the same delivery id, so it is stored once. (Marked after
    // storing: a crash in between stores it twice rather than not at all.)
    const delivery = currentDelivery();
    const seen = delivery === undefined ? undefined : `delivery:${delivery.id}`;
    if (seen !== undefined && bucket.get(seen) != null) {
      return;
    }
    const seq = increment(bucket, 'seq', 1n);
    const event = { subject: message.subject, order };
    bucket.set(`event:${String(seq).padStart(12, '0')}`, encoder.encode(JSON.stringify(event)));
    if (seen !== undefined) {
      bucket.set(seen, encoder.encode('1'));
    }
  },
};

function recent() {
  const bucket = open(BUCKET);
  const keys = [];
  let cursor;
  do {
    const page = bucket.listKeys(cursor);
    keys.push(...page.keys.filter((k) => k.startsWith('event:')));
    cursor = page.cursor;
  } while (cursor !== undefined);
  keys.sort();
  return keys.slice(-RECENT).map((key) => JSON.parse(decoder.decode(bucket.get(key))));
}

function respond(responseOut, status, value) {
  const headers = new Fields();
  headers.append('content-type', encoder.encode('application/json'));
  const response = new OutgoingResponse(headers);
  response.setStatusCode(status);
  const body = response.body();
  ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
  const bytes = encoder.encode(JSON.stringify(value));
  const stream = body.write();
  for (let at = 0; at < bytes.length; at += 4096) {
    stream.blockingWriteAndFlush(bytes.subarray(at, at + 4096));
  }
  stream[Symbol.dispose]();
  OutgoingBody.finish(body, undefined);
}

export const incomingHandler = {
  handle(request, responseOut) {
    const path = (request.pathWithQuery() ?? '/').split('?')[0];
    if (request.method().tag === 'get' && path === '/notifications') {
      respond(responseOut, 200, recent());
    } else {
      respond(responseOut, 404, { error: 'not found' });
    }
  },
};
