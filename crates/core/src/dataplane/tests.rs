//! The data plane fed hand-made frames: what leaves for each, the engine's life with the flow's.
