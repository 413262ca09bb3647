"""uvloop TCP server for terminals: the I/O shell over protocols/ and the actors."""
