//! Whole models built from the layer pairs in [`crate::layers`].

pub mod dense;
mod io;
pub mod mf_edit;
pub mod mf_io;
pub mod mixed;
pub mod moduleformer;
pub mod sb_io;
pub mod seqboat;
