"""ipgraph: the command line that ties the engine, the nodes and the server together."""
