//! placeholder during first build
