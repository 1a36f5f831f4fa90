package main

import (
	"net"
	"syscall"
	"time"
	"unsafe"
)

// readWaitMax is how long waitReadable holds the thread. The server's
// answer to a counted query comes within it; a read that waits for
// something else (pgconn's background reader, started when a write is
// slow, which valgrind makes likely) needs other goroutines to run first,
// and after readWaitMax its Read parks as usual. It is below the 10 ms
// after which Go preempts a running goroutine.
const readWaitMax = 5 * time.Millisecond

// readWaiter waits for one connection's data before its reads
// (waitReadable), without allocating per read: the poll function and the
// connection's syscall.RawConn are made once.
type readWaiter struct {
	raw   syscall.RawConn // nil: the connection has no file descriptor
	until time.Time
	poll  func(fd uintptr)
}

func newReadWaiter(c net.Conn) *readWaiter {
	w := &readWaiter{}
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			w.raw = raw
		}
	}
	w.poll = func(fd uintptr) {
		pfd := struct {
			fd              int32
			events, revents int16
		}{fd: int32(fd), events: 0x1} // POLLIN
		for {
			left := time.Until(w.until)
			if left <= 0 {
				return
			}
			ts := syscall.NsecToTimespec(left.Nanoseconds())
			_, _, errno := syscall.RawSyscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
			if errno != syscall.EINTR {
				return
			}
		}
	}
	return w
}

// waitReadable blocks the thread in ppoll(2), without telling Go's
// scheduler, until the connection has data to read or readWaitMax has
// passed. A counted child's reads come after it, so its goroutine does not
// park on the network poller: whether the server's answer was already
// there when the worker came to read it depends on timing, and the park
// and wake-up that follow when it was not moved a child's count by
// thousands of instructions per query. With one worker and GOMAXPROCS=1
// nothing else needs the thread meanwhile.
func (w *readWaiter) waitReadable() {
	if w.raw == nil {
		return
	}
	w.until = time.Now().Add(readWaitMax)
	_ = w.raw.Control(w.poll)
}
