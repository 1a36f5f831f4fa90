package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/tenantpg/tenantpg/internal/pgtest"
)

// TestDemo runs the demo on a small workload: it must succeed, report every
// tenant on both routes with writes by GORM and sqlx, and leave no server
// process behind.
func TestDemo(t *testing.T) {
	pgtest.RequireBinaries(t)
	var out bytes.Buffer
	if err := run(&out, 4, 200); err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out.String())
	}
	text := out.String()
	t.Log("\n" + text)
	for _, want := range []string{
		"Supavisor-style login (tenant_user={user}.{tenant})",
		"PgBouncer alias per tenant (tenant_database={tenant})",
		"every tenant saw only its own rows and sessions",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	for _, tenant := range tenantIDs {
		rows := 0
		for _, line := range strings.Split(text, "\n") {
			f := strings.Fields(line)
			if len(f) < 8 || f[0] != tenant {
				continue
			}
			rows++
			if !strings.HasSuffix(line, "ok: 0 foreign rows") {
				t.Errorf("cross-tenant check failed: %s", line)
			}
			// f: tenant login database read written (g+x) opened reused ...
			// The login route comes first (app.<tenant> in app), then the
			// alias route (app in <tenant>).
			want := [2][2]string{{"app." + tenant, "app"}, {"app", tenant}}[min(rows, 2)-1]
			if f[1] != want[0] || f[2] != want[1] {
				t.Errorf("route %d: server saw %s in %s for tenant %s, want %s in %s", rows, f[1], f[2], tenant, want[0], want[1])
			}
			if strings.HasPrefix(f[5], "(0+") || strings.Contains(f[5], "+0)") {
				t.Errorf("a library wrote nothing for %s: %s", tenant, line)
			}
		}
		if rows != 2 {
			t.Errorf("tenant %s reported on %d routes, want 2", tenant, rows)
		}
	}
	if kids := children(t); len(kids) != 0 {
		t.Fatalf("processes left running: %v", kids)
	}
}

// children lists the processes whose parent is this test binary.
func children(t *testing.T) []string {
	t.Helper()
	me := strconv.Itoa(os.Getpid())
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil || len(stats) == 0 {
		// Linux (and so CI) always has /proc: there the leak check must use it.
		if runtime.GOOS == "linux" || os.Getenv("CI") != "" {
			t.Fatalf("no /proc to inspect for leftover processes (%v)", err)
		}
		return childrenByPS(t, me)
	}
	var kids []string
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // exited meanwhile
		}
		s := string(b)
		// pid (comm) state ppid ...; comm may contain spaces.
		rest := s[strings.LastIndexByte(s, ')')+1:]
		if f := strings.Fields(rest); len(f) > 1 && f[1] == me {
			kids = append(kids, s[:strings.LastIndexByte(s, ')')+1])
		}
	}
	return kids
}

// childrenByPS is children for systems without /proc (macOS, the BSDs).
func childrenByPS(t *testing.T, me string) []string {
	t.Helper()
	ps := exec.Command("ps", "-A", "-o", "ppid=,pid=,comm=")
	out, err := ps.Output()
	if err != nil {
		t.Fatalf("no /proc and no ps to inspect for leftover processes: %v", err)
	}
	self := strconv.Itoa(ps.Process.Pid) // ps lists itself as our child
	var kids []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[0] == me && f[1] != self {
			kids = append(kids, f[1]+" ("+strings.Join(f[2:], " ")+")")
		}
	}
	return kids
}
