package benchops

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// CPUStat is the machine's CPU time so far, in clock ticks summed over
// all CPUs, from the first line of /proc/stat (Linux).
type CPUStat struct {
	Total int64 // every state, including idle and steal
	Steal int64 // time the hypervisor ran something else while a CPU wanted to run
}

// ReadCPUStat reads /proc/stat. It fails where there is none (not Linux).
func ReadCPUStat() (CPUStat, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return CPUStat{}, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	return parseCPUStat(line)
}

// parseCPUStat reads the aggregate "cpu" line of /proc/stat.
func parseCPUStat(line []byte) (CPUStat, error) {
	f := bytes.Fields(line)
	if len(f) < 9 || string(f[0]) != "cpu" {
		return CPUStat{}, fmt.Errorf("benchops: unexpected /proc/stat line %q", line)
	}
	var s CPUStat
	// user nice system idle iowait irq softirq steal [guest guest_nice]:
	// guest time is already counted in user and nice.
	for i, x := range f[1:9] {
		n, err := strconv.ParseInt(string(x), 10, 64)
		if err != nil {
			return CPUStat{}, fmt.Errorf("benchops: /proc/stat: %w", err)
		}
		s.Total += n
		if i == 7 {
			s.Steal = n
		}
	}
	return s, nil
}

// StealShare is the share of CPU time between a and b that the hypervisor
// took (0 if no time passed).
func StealShare(a, b CPUStat) float64 {
	if d := b.Total - a.Total; d > 0 {
		return float64(b.Steal-a.Steal) / float64(d)
	}
	return 0
}
