//! linux-user: see ../../README.md and ../shared/DESIGN.md.
