"""`acsrec`: a command-line client for the recorder's HTTP API — the same requests against a deployed function
app (URL + function key) and against the local functions host."""
