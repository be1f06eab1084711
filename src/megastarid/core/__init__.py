"""Core: errors, option dataclasses and their rules, option parsing on tyro, YAML config reading, file
helpers and run-file names; imports nothing else of ours."""
