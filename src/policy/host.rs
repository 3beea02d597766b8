//! Host patterns from `[[upstream]].hosts`: exact names, `*.suffix` wildcards and IP literals.
