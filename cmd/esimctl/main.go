package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/esim-pipeline/thingspace-esim/internal/esimctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := esimctl.Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
