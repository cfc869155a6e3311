"""The command-line face: thin click commands over the library, and the demo. Nothing imports this wing."""
