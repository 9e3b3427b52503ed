"""The file source: finding the input's files (`scan`), reading one file (`partition`), what
happened to a file (`changes`) and where its partition stands (`life`), and the source that
pairs saved states with found files and saves them (`source`)."""
