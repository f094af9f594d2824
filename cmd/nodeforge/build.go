package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newBuildCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "build",
		Short: "build (not implemented yet)",
		RunE: func(*cobra.Command, []string) error {
			return errors.New("build is not implemented yet")
		},
	}
}
