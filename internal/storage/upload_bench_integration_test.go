package storage

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/minio/minio-go/v7"

	"github.com/nodeforge/nodeforge/internal/checksum"
	"github.com/nodeforge/nodeforge/internal/storage/miniotest"
	"github.com/nodeforge/nodeforge/internal/testenv/reporoot"
)

// BenchmarkUpload1GiB uploads a 1 GiB file of random data and, in the same
// run, measures what the upload is compared with.
//
// cp and cp+sync copy the same file on the same disk with cp(1), the issue's
// baseline; cp+sync also flushes the copy to disk, as every S3 server
// persists what it acknowledges.
//
// http-put/discard, http-put/write and http-put/write+fsync are the
// ceilings of any S3 server on this machine: a bare HTTP server on
// 127.0.0.1 receives the same 64 MiB parts, 4 at a time, and drops them,
// writes them into one file (left in the page cache, as cp leaves its copy),
// or writes them and fsyncs the file. write+fsync is the least work an
// object store that persists what it acknowledges must do, with no signing,
// hashing or metadata; write is that without the durability.
//
// s3/minio/minio-go-FPutObject is minio-go's own uploader with the same
// part size and parallelism and none of this package's integrity checks:
// the reference for this package's client-side cost.
//
// s3/minio is this package's S3 store against MinIO, by default and in its
// --no-compat mode (no MD5 ETags); s3/versitygw is the same against
// versitygw's posix backend, when its binary is there (hack/tools.sh
// versitygw, or NODEFORGE_VERSITYGW).
//
//	go test ./internal/storage -run '^$' -bench Upload1GiB -benchtime 3x
//
// NODEFORGE_BENCH_SWEEP=1 adds part size / concurrency variants on MinIO.
func BenchmarkUpload1GiB(b *testing.B) {
	const size = 1 << 30
	dir := b.TempDir()
	src, sum := writeDenseFile(b, dir, size)
	dst := filepath.Join(dir, "copy.qcow2")

	b.Run("cp", func(b *testing.B) {
		benchLoop(b, size, func() {
			run(b, "cp", src, dst)
		})
	})
	b.Run("cp+sync", func(b *testing.B) {
		benchLoop(b, size, func() {
			run(b, "cp", src, dst)
			run(b, "sync", dst)
		})
	})
	os.Remove(dst)

	sink := startSink(b, filepath.Join(dir, "sink"))
	for _, mode := range []string{"discard", "write", "write+fsync"} {
		b.Run("http-put/"+mode, func(b *testing.B) {
			benchLoop(b, size, func() {
				if err := sink.put(mode, src, size, DefaultPartSize, DefaultConcurrency); err != nil {
					b.Fatal(err)
				}
			})
		})
	}

	uploads := func(b *testing.B, name string, st *S3) {
		b.Run(name+"/sha256-known", func(b *testing.B) {
			benchLoop(b, size, func() {
				if _, err := st.PutFile(context.Background(), "bench/img.qcow2", src, PutOptions{SHA256: sum}); err != nil {
					b.Fatal(err)
				}
			})
		})
		_ = st.Delete(context.Background(), "bench/img.qcow2")
	}

	type variant struct {
		partMiB, threads int
		noCRC            bool
	}
	variants := []variant{{partMiB: DefaultPartSize >> 20, threads: DefaultConcurrency}}
	if os.Getenv("NODEFORGE_BENCH_SWEEP") == "1" {
		variants = append(variants, variant{partMiB: 64, threads: 4, noCRC: true},
			variant{partMiB: 16, threads: 4}, variant{partMiB: 32, threads: 8}, variant{partMiB: 64, threads: 2},
			variant{partMiB: 64, threads: 8}, variant{partMiB: 128, threads: 4})
	}
	srv := startMinio(b, minioConfig{})
	for _, v := range variants {
		st := srv.bucketStore(b, func(o *S3Options) {
			o.PartSize = int64(v.partMiB) << 20
			o.Concurrency = v.threads
			o.DisablePartChecksums = v.noCRC
		})
		name := fmt.Sprintf("s3/minio/part=%dMiB/threads=%d", v.partMiB, v.threads)
		if v.noCRC {
			name += "/no-part-crc"
		}
		uploads(b, name, st)
		b.Run(name+"/sha256-computed", func(b *testing.B) {
			benchLoop(b, size, func() {
				if _, err := st.PutFile(context.Background(), "bench/img.qcow2", src, PutOptions{}); err != nil {
					b.Fatal(err)
				}
			})
		})
		_ = st.Delete(context.Background(), "bench/img.qcow2")
	}
	// The reference client: minio-go's own FPutObject with the same part
	// size, parallelism and unsigned payloads, and none of this package's
	// integrity work (no sha256 pass, no part CRCs, no verifying HEAD).
	ref := srv.bucketStore(b)
	b.Run("s3/minio/minio-go-FPutObject", func(b *testing.B) {
		benchLoop(b, size, func() {
			_, err := ref.client.FPutObject(context.Background(), ref.Bucket(), "bench/img.qcow2", src, minio.PutObjectOptions{
				PartSize: uint64(DefaultPartSize), NumThreads: uint(DefaultConcurrency), DisableContentSha256: true,
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	})
	srv.Stop()

	noCompat := startMinio(b, minioConfig{args: []string{"--no-compat"}})
	uploads(b, "s3/minio-no-compat", noCompat.bucketStore(b))
	noCompat.Stop()

	if gw := startVersityGW(b); gw != nil {
		uploads(b, "s3/versitygw", gw.bucketStore(b))
	}
}

func benchLoop(b *testing.B, size int64, fn func()) {
	b.SetBytes(size)
	var total time.Duration
	for b.Loop() {
		// Flush what the previous iteration left dirty, untimed, so each
		// measurement starts from the same state.
		b.StopTimer()
		run(b, "sync")
		b.StartTimer()
		start := time.Now()
		fn()
		total += time.Since(start)
	}
	b.ReportMetric(float64(size)*float64(b.N)/(1<<20)/total.Seconds(), "MiB/s")
}

func run(b *testing.B, name string, args ...string) {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		b.Fatalf("%s: %v: %s", name, err, out)
	}
}

// writeDenseFile writes size bytes of random data (no holes: cp and the
// upload both move every byte) and returns its path and sha256.
func writeDenseFile(b *testing.B, dir string, size int64) (string, string) {
	p := filepath.Join(dir, "bench-"+strconv.FormatInt(size, 10)+".qcow2")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 4<<20)
	rng := newBenchRand()
	for off := int64(0); off < size; off += int64(len(buf)) {
		_, _ = rng.Read(buf)
		if _, err := f.Write(buf[:min(int64(len(buf)), size-off)]); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	sum, _, err := checksum.File(p)
	if err != nil {
		b.Fatal(err)
	}
	return p, sum
}

// sink is a bare HTTP server on 127.0.0.1: PUT /discard reads the body and
// drops it; PUT /write?off=N and PUT /write+fsync?off=N write it at offset N
// of one file, and POST /write+fsync fsyncs that file.
type sink struct {
	url    string
	client *http.Client
	file   *os.File
}

func startSink(b *testing.B, path string) *sink {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s := &sink{url: "http://" + l.Addr().String(), client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /discard", func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	write := func(w http.ResponseWriter, r *http.Request) {
		off, err := strconv.ParseInt(r.URL.Query().Get("off"), 10, 64)
		if err == nil {
			_, err = io.Copy(io.NewOffsetWriter(s.file, off), r.Body)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	}
	mux.HandleFunc("PUT /write", write)
	mux.HandleFunc("PUT /write+fsync", write)
	mux.HandleFunc("POST /write+fsync", func(w http.ResponseWriter, r *http.Request) {
		if err := s.file.Sync(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	b.Cleanup(func() {
		_ = srv.Close()
		s.client.CloseIdleConnections()
		if s.file != nil {
			s.file.Close()
		}
	})
	return s
}

// put sends src in partSize parts, threads at a time.
func (s *sink) put(mode, src string, size, partSize int64, threads int) error {
	if mode != "discard" {
		if s.file != nil {
			s.file.Close()
		}
		f, err := os.Create(filepath.Join(filepath.Dir(src), "sink.qcow2"))
		if err != nil {
			return err
		}
		s.file = f
	}
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	var g errgroup.Group
	g.SetLimit(threads)
	for off := int64(0); off < size; off += partSize {
		n := min(partSize, size-off)
		g.Go(func() error {
			return s.do(http.MethodPut, "/"+mode+"?off="+strconv.FormatInt(off, 10), io.NewSectionReader(f, off, n), n)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if mode == "write+fsync" {
		return s.do(http.MethodPost, "/"+mode, nil, 0)
	}
	return nil
}

func (s *sink) do(method, path string, body io.Reader, n int64) error {
	req, err := http.NewRequest(method, s.url+path, body)
	if err != nil {
		return err
	}
	req.ContentLength = n
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, msg)
	}
	return nil
}

// versityGW is a versitygw process (posix backend, temp dir) on 127.0.0.1.
type versityGW struct {
	addr, accessKey, secretKey string
}

// startVersityGW starts versitygw and stops it by PID in b.Cleanup. It
// returns nil, and logs why, when the binary is not built.
func startVersityGW(b *testing.B) *versityGW {
	bin := os.Getenv("NODEFORGE_VERSITYGW")
	if bin == "" {
		root, err := reporoot.Dir()
		var out []byte
		if err == nil {
			out, err = exec.Command("bash", filepath.Join(root, "hack", "tools.sh"), "path", "versitygw").Output()
		}
		if err == nil {
			bin = strings.TrimSpace(string(out))
		}
	}
	if st, err := os.Stat(bin); err == nil && st.IsDir() {
		bin = filepath.Join(bin, "versitygw")
	}
	if st, err := os.Stat(bin); err != nil || !st.Mode().IsRegular() {
		b.Logf("versitygw not built (%q); skipping its rows: hack/tools.sh versitygw builds it", bin)
		return nil
	}
	gw := &versityGW{addr: miniotest.FreeAddr(b), accessKey: "AK" + randHex(9), secretKey: "SK" + randHex(19)}
	cmd := exec.Command(bin, "--port", gw.addr, "posix", b.TempDir())
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+gw.accessKey, "ROOT_SECRET_KEY="+gw.secretKey)
	logf, err := os.Create(filepath.Join(b.TempDir(), "versitygw.log"))
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start versitygw: %v", err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
	})
	for deadline := time.Now().Add(30 * time.Second); ; {
		c, err := net.DialTimeout("tcp", gw.addr, time.Second)
		if err == nil {
			c.Close()
			return gw
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			b.Fatalf("versitygw on %s not listening after 30s: %v\n%s", gw.addr, err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (gw *versityGW) bucketStore(b *testing.B) *S3 {
	st, err := NewS3(S3Options{
		Endpoint: "http://" + gw.addr, Bucket: "nf-" + strings.ToLower(randHex(6)), Region: "us-east-1",
		Credentials: NewCredentials(gw.accessKey, gw.secretKey, ""), Addressing: AddressingPath,
		PlainHTTP: true, CreateBucket: true,
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := st.EnsureBucket(context.Background()); err != nil {
		b.Fatal(err)
	}
	return st
}
