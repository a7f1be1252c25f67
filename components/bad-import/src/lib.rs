//! A component whose import the host cannot satisfy (`weft-test:bad-import/missing`).

wit_bindgen::generate!({ path: "wit", world: "bad-import" });

struct BadImport;

impl Guest for BadImport {
    fn run() -> u32 {
        weft_test::bad_import::missing::do_something()
    }
}

export!(BadImport);
