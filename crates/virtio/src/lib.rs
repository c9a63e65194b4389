//! virtio: see ../../README.md and ../shared/DESIGN.md.
