"""ipgraph node families. Importing this package registers every node type into engine.REGISTRY."""
