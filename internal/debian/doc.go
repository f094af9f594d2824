// Package debian holds what nodeforge knows about Debian's package
// metadata: comparing versions the way dpkg does, matching the version
// constraints of a NodeImage spec, and reading dpkg's status database. The
// builder (which picks and records versions) and verify (which checks them
// in a finished image) share it, so they cannot disagree.
package debian
