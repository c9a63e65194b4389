//! Format-independent image operations behind `virtkit img` (convert,
//! commit, rebase, compare, measure, map, bench).
