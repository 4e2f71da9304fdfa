//! Flash attention (being written).
