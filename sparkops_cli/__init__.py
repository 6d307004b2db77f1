"""`sparkops`, the command-line client: the REST API from a terminal or a script. It talks
HTTP only (httpx) and imports nothing of the server (.importlinter), so it loads in a blink and
works against any Spark-Ops server it can reach."""
