package kubelab

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// TestAPIServerInformer is the Tier A smoke test: a real etcd and
// kube-apiserver on loopback, a client-go informer on Nodes, and a Node
// created through the API shows up in it with its labels.
func TestAPIServerInformer(t *testing.T) {
	start := time.Now()
	a := StartAPIServer(t)
	t.Logf("etcd + kube-apiserver up in %v at %s", time.Since(start).Round(time.Millisecond), a.Server())

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	factory := informers.NewSharedInformerFactory(a.Clientset(), 0)
	seen := make(chan *corev1.Node, 1)
	_, err := factory.Core().V1().Nodes().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := obj.(*corev1.Node); ok && n.Name == "n1" {
				seen <- n
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	defer func() {
		cancel() // Shutdown waits for the informers, which stop with ctx
		factory.Shutdown()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), factory.Core().V1().Nodes().Informer().HasSynced) {
		t.Fatal("the Node informer never synced")
	}
	_, err = a.Clientset().CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"weft.dev/site": "a"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-seen:
		if n.Labels["weft.dev/site"] != "a" {
			t.Errorf("informer saw node n1 with labels %v", n.Labels)
		}
	case <-ctx.Done():
		t.Fatal("the informer did not see the created Node")
	}

	// The kubeconfig file is usable on its own, by any client.
	cfg, err := clientcmd.BuildConfigFromFlags("", a.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != a.Server() || !strings.HasPrefix(cfg.Host, "https://127.0.0.1:") {
		t.Errorf("kubeconfig server %q, want %q on loopback", cfg.Host, a.Server())
	}
	if a.RESTConfig().Host != a.Server() {
		t.Errorf("RESTConfig host %q", a.RESTConfig().Host)
	}
}

func TestBinDirMissing(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(EnvBinDir, dir)
	_, err := BinDir(binEtcd, binAPIServer)
	if err == nil {
		t.Fatal("BinDir found binaries in an empty directory")
	}
	for _, want := range []string{"scripts/build-kube.sh", "etcd", "kube-apiserver", dir} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	// A directory that has them.
	for _, b := range []string{binEtcd, binAPIServer} {
		if err := os.WriteFile(dir+"/"+b, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := BinDir(binEtcd, binAPIServer); err != nil || got != dir {
		t.Errorf("BinDir = %q, %v; want %q", got, err, dir)
	}
}
