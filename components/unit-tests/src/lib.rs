//! Nothing here: the unit tests are in `tests/`, one file per component.
