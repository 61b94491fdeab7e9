"""The command line: verbs that parse, resolve the config once, call the library and print."""
