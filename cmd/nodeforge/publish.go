package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newPublishCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "publish",
		Short: "publish (not implemented yet)",
		RunE: func(*cobra.Command, []string) error {
			return errors.New("publish is not implemented yet")
		},
	}
}
