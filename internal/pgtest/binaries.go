package pgtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// installHint is part of every "binaries missing" message.
const installHint = "install postgresql and pgbouncer (Debian/Ubuntu: apt-get install -y postgresql pgbouncer), " +
	"or set TENANTPG_TEST_PG_URL and TENANTPG_TEST_PGBOUNCER_ADDR"

// binaries holds absolute paths of the server programs.
type binaries struct {
	initdb    string
	postgres  string
	pgbouncer string
}

// findPostgresBinDir returns the directory holding initdb and postgres.
func findPostgresBinDir() (string, error) {
	if dir := os.Getenv("TENANTPG_TEST_PG_BINDIR"); dir != "" {
		if isExecutable(filepath.Join(dir, "initdb")) && isExecutable(filepath.Join(dir, "postgres")) {
			return dir, nil
		}
		return "", fmt.Errorf("pgtest: TENANTPG_TEST_PG_BINDIR=%s holds no initdb/postgres", dir)
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		return versionLess(filepath.Base(filepath.Dir(dirs[j])), filepath.Base(filepath.Dir(dirs[i])))
	})
	for _, dir := range dirs {
		if isExecutable(filepath.Join(dir, "initdb")) && isExecutable(filepath.Join(dir, "postgres")) {
			return dir, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if p, err = filepath.EvalSymlinks(p); err == nil {
			dir := filepath.Dir(p)
			if isExecutable(filepath.Join(dir, "postgres")) {
				return dir, nil
			}
		}
	}
	return "", errors.New("pgtest: PostgreSQL server binaries (initdb, postgres) not found; " + installHint)
}

// findPgBouncer returns the path of the pgbouncer program.
func findPgBouncer() (string, error) {
	if p := os.Getenv("TENANTPG_TEST_PGBOUNCER"); p != "" {
		if isExecutable(p) {
			return p, nil
		}
		return "", fmt.Errorf("pgtest: TENANTPG_TEST_PGBOUNCER=%s is not executable", p)
	}
	if isExecutable("/usr/sbin/pgbouncer") {
		return "/usr/sbin/pgbouncer", nil
	}
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	return "", errors.New("pgtest: pgbouncer not found; " + installHint)
}

// findPostgres locates initdb and postgres.
func findPostgres() (binaries, error) {
	dir, err := findPostgresBinDir()
	if err != nil {
		return binaries{}, err
	}
	return binaries{initdb: filepath.Join(dir, "initdb"), postgres: filepath.Join(dir, "postgres")}, nil
}

// findBinaries locates initdb, postgres and pgbouncer.
func findBinaries() (binaries, error) {
	b, err := findPostgres()
	if err != nil {
		return b, err
	}
	if b.pgbouncer, err = findPgBouncer(); err != nil {
		return b, err
	}
	return b, nil
}

// Available reports whether [Start] can run here: it returns nil when the
// PostgreSQL and PgBouncer binaries are found (and, when running as root, the
// OS user "postgres" exists), otherwise an error explaining what to install.
func Available() error {
	if _, err := findBinaries(); err != nil {
		return err
	}
	_, err := lookupRunAs()
	return err
}

// isExecutable reports whether path is a regular file with an execute bit.
func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
}

// versionLess compares dotted numeric versions such as "9.6" and "15".
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) || i < len(bs); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x < y
		}
	}
	return a < b
}

// runAs describes the OS identity the server processes run under.
type runAs struct {
	cred *syscall.Credential // nil: the current user
	uid  int
	gid  int
}

// lookupRunAs returns the identity for server processes: the OS user
// "postgres" when running as root, otherwise the current user.
func lookupRunAs() (*runAs, error) {
	if os.Geteuid() != 0 {
		return &runAs{uid: os.Geteuid(), gid: os.Getegid()}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root needs the OS user %q to run the servers as: %w", "postgres", err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("pgtest: uid of postgres: %w", err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("pgtest: gid of postgres: %w", err)
	}
	return &runAs{
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{uint32(gid)}},
		uid:  uid,
		gid:  gid,
	}, nil
}

// chown gives path to the server user (no-op when not running as root).
func (r *runAs) chown(path string) error {
	if r.cred == nil {
		return nil
	}
	return os.Lchown(path, r.uid, r.gid)
}

// writeFile writes a file readable only by the server user.
func (r *runAs) writeFile(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	if err := r.chown(tmp); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// ownerFile names the file recording the PID of the test process owning a
// temporary directory.
const ownerFile = "harness.pid"

// sweepOnce guards sweepStaleDirs.
var sweepOnce sync.Once

// sweepStaleDirs removes temporary directories left behind by test
// processes that were killed (their servers died with them thanks to
// Pdeathsig, but nobody removed the files). Directories of live processes,
// for example other test binaries of `go test ./...`, are kept.
func sweepStaleDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "tenantpg-*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(dir)
		}
	}
}

// makeTempDir creates a temporary directory owned by the server user.
func (r *runAs) makeTempDir(pattern string) (string, error) {
	sweepOnce.Do(sweepStaleDirs)
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	if err := r.chown(dir); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}
