"""The debugger page's files, served as they are by collector.debugger.api (package data)."""
