// Package freeport picks TCP ports on 127.0.0.1 for servers that must be
// told a port number instead of being handed a listener: QEMU's port
// forwards, and the server processes tests start (and restart on the same
// address).
//
// The kernel's own choice for port 0 comes from its ephemeral range
// (net.ipv4.ip_local_port_range), which every outgoing connection on the
// machine draws its source port from too: between closing a probe
// listener and the server binding the port, any connection may take it.
// So ports are drawn below that range, where only explicit binds land,
// and checked free by binding them; hack/lib/server.sh does the same for
// the shell scripts.
package freeport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

const (
	// floor is the lowest port handed out: below it are well-known and
	// commonly configured service ports.
	floor = 10000
	// tries bounds the random draws before giving up.
	tries = 100
	// rangeFile holds the kernel's ephemeral port range.
	rangeFile = "/proc/sys/net/ipv4/ip_local_port_range"
	// defaultEphemeralLow is Linux's default start of that range.
	defaultEphemeralLow = 32768
)

// intN draws a port offset; tests replace it.
var intN = rand.IntN

// Port returns a TCP port on 127.0.0.1 that was free a moment ago, outside
// the kernel's ephemeral range.
func Port() (int, error) {
	hi := ephemeralLow()
	if hi-floor < 1000 {
		// A range that starts this low leaves nothing safe below it.
		return 0, fmt.Errorf("the ephemeral port range starts at %d: no free range above %d to pick from", hi, floor)
	}
	for range tries {
		p := floor + intN(hi-floor)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		if err := l.Close(); err != nil {
			return 0, err
		}
		return p, nil
	}
	return 0, errors.New("no free port on 127.0.0.1 below the ephemeral range")
}

// Addr is Port as 127.0.0.1:PORT.
func Addr() (string, error) {
	p, err := Port()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
}

// ephemeralLow is the first port of the kernel's ephemeral range (the
// Linux default when it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile(rangeFile)
	if err != nil {
		return defaultEphemeralLow
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return defaultEphemeralLow
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil || lo <= 0 {
		return defaultEphemeralLow
	}
	return lo
}
