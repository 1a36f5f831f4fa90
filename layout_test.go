package tenantpg

import (
	"testing"
	"unsafe"
)

// The checkout path reads one cache line of each of these structs (see
// "Cache lines" in park.go). A field added in the wrong place, or one that
// changes a size, moves hot fields apart silently; these checks catch it.

const cacheLine = 64

func TestHotFieldsShareACacheLine(t *testing.T) {
	var h Conn
	var pc pconn
	var e poolEntry
	var c Connector
	hot := []struct {
		name string
		end  uintptr // offset of the end of the field
	}{
		{"Conn.tenant", unsafe.Offsetof(h.tenant) + unsafe.Sizeof(h.tenant)},
		{"Conn.last", unsafe.Offsetof(h.last) + unsafe.Sizeof(h.last)},
		{"pconn.uses", unsafe.Offsetof(pc.uses) + unsafe.Sizeof(pc.uses)},
		{"poolEntry.clock", unsafe.Offsetof(e.clock) + unsafe.Sizeof(e.clock)},
		{"poolEntry.mapGen", unsafe.Offsetof(e.mapGen) + unsafe.Sizeof(e.mapGen)},
		{"poolEntry.slow", unsafe.Offsetof(e.slow) + unsafe.Sizeof(e.slow)},
		{"Connector.budget", unsafe.Offsetof(c.budget) + unsafe.Sizeof(c.budget)},
		{"Connector.closed", unsafe.Offsetof(c.closed) + unsafe.Sizeof(c.closed)},
	}
	for _, f := range hot {
		if f.end > cacheLine {
			t.Errorf("%s ends at byte %d, outside the struct's first cache line", f.name, f.end)
		}
	}
	// Go allocates an object whose size is a multiple of 64 bytes at a
	// multiple of its size, so every such object starts on a line.
	for _, s := range []struct {
		name string
		size uintptr
	}{
		{"Conn", unsafe.Sizeof(h)},
		{"pconn", unsafe.Sizeof(pc)},
		{"poolEntry", unsafe.Sizeof(e)},
		{"Connector", unsafe.Sizeof(c)},
	} {
		if s.size%cacheLine != 0 {
			t.Errorf("%s is %d bytes, not a multiple of %d: adjust its padding", s.name, s.size, cacheLine)
		}
	}
	if unsafe.Sizeof(pc) != cacheLine {
		t.Errorf("pconn is %d bytes; every checkout writes it, so it gets one line to itself", unsafe.Sizeof(pc))
	}
}
