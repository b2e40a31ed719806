package main

import "errors"

// runAgent is filled in by the issue that builds it.
func runAgent(args []string) error { return errors.New("the agent command is not built yet") }
