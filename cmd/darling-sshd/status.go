package main

import (
	"errors"
	"flag"
	"io"
)

func statusCmd(fs *flag.FlagSet) action {
	return func(_, stderr io.Writer) int {
		return failed(stderr, "status", errors.New("not built yet"))
	}
}
