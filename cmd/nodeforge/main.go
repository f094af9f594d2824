// Command nodeforge builds, verifies and publishes node images on a
// workstation, and is the entrypoint inside the builder image.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "nodeforge:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "nodeforge",
		Short:         "Build, verify and publish virtual-machine node images",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newBuildCmd(), newRunCmd(), newVerifyCmd(), newPublishCmd(), newVersionCmd())
	return root
}
