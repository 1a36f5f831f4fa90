package benchops

import "testing"

func TestParseCPUStat(t *testing.T) {
	s, err := parseCPUStat([]byte("cpu  100 5 50 800 10 1 4 30 7 0"))
	if err != nil {
		t.Fatal(err)
	}
	// Guest time (7) is inside user already: not added again.
	if s.Total != 1000 || s.Steal != 30 {
		t.Errorf("got %+v, want Total 1000, Steal 30", s)
	}
	if got := StealShare(CPUStat{}, s); got != 0.03 {
		t.Errorf("StealShare = %v, want 0.03", got)
	}
	if got := StealShare(s, s); got != 0 {
		t.Errorf("StealShare over no time = %v, want 0", got)
	}
	for _, bad := range []string{"cpu0 1 2 3 4 5 6 7 8", "cpu 1 2 3", "cpu 1 2 3 x 5 6 7 8"} {
		if _, err := parseCPUStat([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
