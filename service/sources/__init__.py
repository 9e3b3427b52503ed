"""The sources of records: `files` (paths and globs on this machine) and `kafka` (a consumer
group)."""
