package main

import "errors"

// runManager is filled in by the issue that builds it.
func runManager(args []string) error { return errors.New("the manager command is not built yet") }
