package builder

import (
	"io/fs"
	"syscall"
)

type statInfo struct {
	ino   uint64
	nlink uint64
}

func sysStat(info fs.FileInfo) (statInfo, bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return statInfo{}, false
	}
	return statInfo{ino: st.Ino, nlink: st.Nlink}, true
}
