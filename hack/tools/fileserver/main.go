// Command fileserver serves one directory over plain HTTP on the loopback
// interface. nodeforge's scripts and tests use it to serve the offline
// Kubernetes apt repository (hack/k8s-apt-repo.sh serve) without depending on
// python3 or any other server being installed.
//
//	fileserver -dir DIR [-addr 127.0.0.1:0] [-port-file FILE] [-pid-file FILE] [-log FILE]
//
// It refuses any listen address that is not a loopback address. With port 0
// (the default) the kernel picks a free port; the chosen port is written to
// -port-file (atomically, once the socket is listening) and to stderr. Every
// request is logged, one line each, to -log (default stderr). SIGINT and
// SIGTERM shut it down gracefully.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "fileserver: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("fileserver", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory to serve (required)")
	addr := fs.String("addr", "127.0.0.1:0", "loopback address to listen on; port 0 picks a free port")
	portFile := fs.String("port-file", "", "write the port actually listened on to this file")
	pidFile := fs.String("pid-file", "", "write this process's pid to this file at start")
	logFile := fs.String("log", "", "append one line per request to this file (default stderr)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("-dir is required")
	}
	if st, err := os.Stat(*dir); err != nil {
		return err
	} else if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", *dir)
	}
	if err := checkLoopback(*addr); err != nil {
		return err
	}

	if *pidFile != "" {
		if err := writeAtomic(*pidFile, strconv.Itoa(os.Getpid())+"\n"); err != nil {
			return err
		}
	}

	var logOut io.Writer = os.Stderr
	if *logFile != "" {
		f, err := os.OpenFile(*logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		logOut = f
	}
	reqLog := log.New(logOut, "", log.LstdFlags|log.LUTC)

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if *portFile != "" {
		if err := writeAtomic(*portFile, strconv.Itoa(port)+"\n"); err != nil {
			ln.Close()
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "fileserver: serving %s on http://%s/\n", *dir, ln.Addr())

	srv := &http.Server{
		Handler:           logRequests(reqLog, http.FileServer(http.Dir(*dir))),
		ReadHeaderTimeout: 10 * time.Second,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(shutdownCtx)
}

// checkLoopback rejects listen addresses that could expose the server beyond
// this machine: the host must be a literal loopback IP or "localhost".
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("bad -addr %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("refusing to listen on %q: only loopback addresses (e.g. 127.0.0.1) are allowed", addr)
	}
	return nil
}

func writeAtomic(path, content string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".port-*")
	if err != nil {
		return err
	}
	if _, err := tmp.WriteString(content); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

func logRequests(l *log.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		l.Printf("%s %s %s %d %dB %s %q", r.RemoteAddr, r.Method, r.URL.RequestURI(), rec.status, rec.bytes, time.Since(start).Round(time.Microsecond), r.UserAgent())
	})
}
