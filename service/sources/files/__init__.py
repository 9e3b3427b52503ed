"""The file source: finding the input's files (`scan`), reading one file (`partition`), and the
source that pairs saved states with found files and saves them (`source`)."""
