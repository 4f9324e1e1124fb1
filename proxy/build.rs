//! The git revision for `--version` and the start-up log line.

include!("../build-support/revision.rs");

fn main() {
    emit_revision();
}
