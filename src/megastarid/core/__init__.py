"""Core: errors, option parsing, file helpers and run-file names; imports nothing else of ours."""
