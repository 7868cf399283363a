package main

import (
	"errors"
	"flag"
	"io"
)

func registerCmd(fs *flag.FlagSet) action {
	return func(_, stderr io.Writer) int {
		return failed(stderr, "register", errors.New("not built yet"))
	}
}
