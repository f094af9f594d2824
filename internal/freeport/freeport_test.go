package freeport

import (
	"math/rand/v2"
	"net"
	"strconv"
	"testing"
)

func TestPortIsFreeAndBelowTheEphemeralRange(t *testing.T) {
	hi := ephemeralLow()
	seen := map[int]bool{}
	for range 20 {
		p, err := Port()
		if err != nil {
			t.Fatal(err)
		}
		if p < floor || p >= hi {
			t.Fatalf("port %d outside [%d, %d)", p, floor, hi)
		}
		seen[p] = true
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d is not free: %v", p, err)
		}
		_ = l.Close()
	}
	if len(seen) < 2 {
		t.Errorf("20 draws gave %d distinct ports", len(seen))
	}
}

// A port in use is skipped: the draw that lands on it is followed by
// another.
func TestPortSkipsPortsInUse(t *testing.T) {
	taken, err := Port()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(taken)))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	free, err := Port()
	if err != nil {
		t.Fatal(err)
	}
	draws := []int{taken - floor, taken - floor, free - floor}
	intN = func(int) int {
		d := draws[0]
		if len(draws) > 1 {
			draws = draws[1:]
		}
		return d
	}
	t.Cleanup(func() { intN = rand.IntN })
	got, err := Port()
	if err != nil {
		t.Fatal(err)
	}
	if got != free {
		t.Fatalf("Port() = %d, want %d (%d is listening)", got, free, taken)
	}
}
