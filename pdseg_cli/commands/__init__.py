"""One module per subcommand; each only parses options, calls the engine and renders."""
