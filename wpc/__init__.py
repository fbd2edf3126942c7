"""`wpc`: the entry points. The commands (`wpc.cli`) and the composition of the whole
system (`wpc.up`) live here, above the services; `wpc.tools` holds the tools of an
integration engineer or an operator (send, validate, feed report, replay, roster).
Nothing below imports this package (tests/unit/test_layout.py)."""
