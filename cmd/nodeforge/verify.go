package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newVerifyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "verify",
		Short: "verify (not implemented yet)",
		RunE: func(*cobra.Command, []string) error {
			return errors.New("verify is not implemented yet")
		},
	}
}
