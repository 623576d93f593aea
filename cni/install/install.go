// Package install puts weft-cni on a node: the binary into the runtime's
// CNI bin dir and its configuration into the CNI conf dir, either as the
// node's network (primary: its own conflist, named to sort first so the
// runtime picks it) or appended to the plugins of the conflist already
// there (chained), keeping a backup so that Uninstall restores that file
// byte for byte. The weft DaemonSet's init container runs it with the
// host's directories mounted (`weft-cni install`).
//
// Every write is atomic (a temporary file renamed into place) and the
// runtime loads no file the installer leaves in between: backups end in
// .weft-bak and temporary files in .tmp, which it does not read.
package install

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/weftmesh/weft/cni/plugin"
)

// Mode is how weft-cni joins the node's network.
type Mode string

const (
	// Primary: weft-cni is the network (the agent makes the pod's veth).
	Primary Mode = "primary"
	// Chained: weft-cni runs after the cluster's veth-based plugin
	// (bridge, ptp) and enforces policy on the veth it made.
	Chained Mode = "chained"
)

// The files the installer makes.
const (
	// PrimaryConflist is primary mode's configuration: "05-" sorts before
	// the usual "10-<cni>.conflist", and the runtime uses the first file.
	PrimaryConflist = "05-weft.conflist"
	// NetworkName is the network's name in PrimaryConflist.
	NetworkName = "weft"
	// BackupSuffix ends the copy of a conflist before weft-cni was
	// chained into it.
	BackupSuffix = ".weft-bak"
)

// confExts are the extensions the runtime loads from the conf dir, in
// the order libcni, containerd and CRI-O consider them (then by name).
var confExts = []string{".conf", ".conflist", ".json"}

// Options are what `weft-cni install` was given.
type Options struct {
	BinDir, ConfDir string
	Mode            Mode
	// ChainInto names the conflist to chain into: a file name in ConfDir
	// or a network's name. Empty: the file the runtime uses (the first).
	ChainInto   string
	AgentSocket string
	LogFile     string
	Timeout     time.Duration
	// Executable is copied to BinDir/weft-cni; empty: this process's own.
	Executable string
}

// Install installs weft-cni as o says and returns what it did, one line a
// change, for the init container's log. Running it again with the same
// options changes nothing; with the other mode it undoes the first.
func Install(o Options) ([]string, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	entry, err := o.entry("")
	if err != nil {
		return nil, err
	}
	var did []string
	if err := installBinary(o, &did); err != nil {
		return did, err
	}
	switch o.Mode {
	case Primary:
		// A conflist chained into earlier would still hold weft-cni after
		// another plugin; put it back as it was.
		if err := restoreChained(o.ConfDir, "", &did); err != nil {
			return did, err
		}
		err = writePrimary(o.ConfDir, entry, &did)
	case Chained:
		// The primary conflist sorts first: left there, it would be the
		// network and the chained entry never run.
		if err := removePrimary(o.ConfDir, &did); err != nil {
			return did, err
		}
		err = chain(o, &did)
	}
	if err == nil && len(did) == 0 {
		did = append(did, "weft-cni is installed as asked: nothing to change")
	}
	return did, err
}

func (o *Options) validate() error {
	switch o.Mode {
	case Primary, Chained:
	default:
		return fmt.Errorf("--mode %q: use primary (weft-cni is the network) or chained (after the cluster's bridge or ptp plugin)", o.Mode)
	}
	if o.BinDir == "" || o.ConfDir == "" {
		return errors.New("--bin-dir and --conf-dir are required (the host's CNI directories as mounted, e.g. /host/opt/cni/bin and /host/etc/cni/net.d)")
	}
	for _, d := range []struct{ flag, dir string }{{"--bin-dir", o.BinDir}, {"--conf-dir", o.ConfDir}} {
		fi, err := os.Stat(d.dir)
		if err != nil {
			return fmt.Errorf("%s %s: %w (mount the host's directory there)", d.flag, d.dir, err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s %s is not a directory", d.flag, d.dir)
		}
	}
	if o.ChainInto != "" {
		if o.Mode != Chained {
			return errors.New("--chain-into goes with --mode chained")
		}
		if strings.ContainsAny(o.ChainInto, `/\`) || o.ChainInto == "." || o.ChainInto == ".." {
			return fmt.Errorf("--chain-into %q: give a file name in --conf-dir (10-bridge.conflist) or a network's name, not a path", o.ChainInto)
		}
	}
	if o.AgentSocket == "" {
		o.AgentSocket = plugin.DefaultAgentSocket
	}
	if o.Timeout == 0 {
		o.Timeout = plugin.DefaultTimeout
	}
	return nil
}

// entry is weft-cni's plugin entry in a conflist; the plugin's own parser
// checks it, so install refuses what the plugin would refuse at the first
// pod.
func (o *Options) entry(after string) (json.RawMessage, error) {
	e := struct {
		Type         string `json:"type"`
		AgentSocket  string `json:"agentSocket"`
		Timeout      string `json:"timeout"`
		LogFile      string `json:"logFile,omitempty"`
		ChainedAfter string `json:"chainedAfter,omitempty"`
	}{plugin.Type, o.AgentSocket, duration(o.Timeout), o.LogFile, after}
	b, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	probe, _ := decodeObject(b)
	probe = probe.set("name", json.RawMessage(`"probe"`)).set("cniVersion", json.RawMessage(`"1.0.0"`))
	if _, err := plugin.ParseConfig(probe.marshal()); err != nil {
		return nil, fmt.Errorf("the options make a configuration weft-cni would refuse: %w", err)
	}
	return b, nil
}

// duration writes whole seconds as "60s" rather than Go's "1m0s".
func duration(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return d.String()
}

func installBinary(o Options, did *[]string) error {
	src := o.Executable
	if src == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("finding this executable to copy: %w", err)
		}
		src = exe
	}
	dst := filepath.Join(o.BinDir, plugin.Type)
	if a, err := os.Stat(src); err == nil {
		if b, err := os.Stat(dst); err == nil && os.SameFile(a, b) {
			return nil // run from the bin dir itself
		}
	}
	same, err := sameContent(src, dst)
	if err != nil {
		return fmt.Errorf("comparing %s with %s: %w", src, dst, err)
	}
	if fi, err := os.Stat(dst); same && err == nil && fi.Mode().Perm() == 0o755 {
		return nil
	}
	if err := copyAtomic(src, dst); err != nil {
		return err
	}
	*did = append(*did, "installed "+dst)
	return nil
}

// primaryConflist is primary mode's conflist. cniVersion 1.0.0 is what
// every runtime of the last years reads; cniVersions adds 1.1.0 for those
// that know it (containerd 2, CRI-O 1.30), which then send STATUS and GC.
func primaryConflist(entry json.RawMessage) ([]byte, error) {
	list := struct {
		CNIVersion  string            `json:"cniVersion"`
		CNIVersions []string          `json:"cniVersions"`
		Name        string            `json:"name"`
		Plugins     []json.RawMessage `json:"plugins"`
	}{"1.0.0", []string{"1.0.0", "1.1.0"}, NetworkName, []json.RawMessage{entry}}
	b, err := json.Marshal(list)
	if err != nil {
		return nil, err
	}
	return indent(b)
}

func writePrimary(confDir string, entry json.RawMessage, did *[]string) error {
	data, err := primaryConflist(entry)
	if err != nil {
		return err
	}
	path := filepath.Join(confDir, PrimaryConflist)
	if old, err := os.ReadFile(path); err == nil && string(old) == string(data) {
		return nil
	}
	if err := writeAtomic(path, data, 0o644); err != nil {
		return err
	}
	*did = append(*did, "wrote "+path)
	return nil
}

// removePrimary removes PrimaryConflist, when it is weft-cni's.
func removePrimary(confDir string, did *[]string) error {
	path := filepath.Join(confDir, PrimaryConflist)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	if !holdsWeft(data) {
		return fmt.Errorf("%s is not weft-cni's (no weft-cni plugin in it): move it away, it would sort before the conflist weft-cni is chained into", path)
	}
	if _, err := removeIfExists(path); err != nil {
		return err
	}
	*did = append(*did, "removed "+path+" (primary mode)")
	return nil
}

// holdsWeft reports whether data is a conflist with a weft-cni plugin.
func holdsWeft(data []byte) bool {
	o, err := decodeObject(data)
	if err != nil {
		return false
	}
	plugins, _, err := pluginsOf(o)
	return err == nil && slices.ContainsFunc(plugins, func(p json.RawMessage) bool { return pluginType(p) == plugin.Type })
}

// pluginsOf returns a conflist's plugin entries.
func pluginsOf(o object) ([]json.RawMessage, bool, error) {
	raw, ok := o.get("plugins")
	if !ok {
		return nil, false, nil
	}
	var plugins []json.RawMessage
	if err := json.Unmarshal(raw, &plugins); err != nil {
		return nil, true, fmt.Errorf("its plugins are not a list: %w", err)
	}
	return plugins, true, nil
}

// confFiles are the configuration files of dir the runtime considers, in
// the order it does: by name (os.ReadDir sorts).
func confFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", dir, err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() || !slices.Contains(confExts, filepath.Ext(e.Name())) {
			continue
		}
		out = append(out, e.Name())
	}
	return out, nil
}

// chain appends weft-cni to the conflist o names, converting a
// single-plugin .conf into a conflist of the same stem.
func chain(o Options, did *[]string) error {
	target, err := chainTarget(o)
	if err != nil {
		return err
	}
	// A conflist chained into earlier that is not this one is restored:
	// one weft-cni in the conf dir.
	if err := restoreChained(o.ConfDir, target, did); err != nil {
		return err
	}
	path := filepath.Join(o.ConfDir, target)
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if filepath.Ext(target) == ".conflist" {
		return chainList(o, path, data, fi.Mode().Perm(), did)
	}
	return chainConf(o, path, data, fi.Mode().Perm(), did)
}

// chainTarget is the file name, in the conf dir, of the configuration to
// chain into.
func chainTarget(o Options) (string, error) {
	files, err := confFiles(o.ConfDir)
	if err != nil {
		return "", err
	}
	files = slices.DeleteFunc(files, func(f string) bool { return f == PrimaryConflist })
	if o.ChainInto == "" {
		if len(files) == 0 {
			return "", fmt.Errorf("no CNI configuration in %s to chain weft-cni into: install the cluster's network plugin first (weft-cni chained runs after a veth-based plugin such as bridge or ptp), or use --mode primary", o.ConfDir)
		}
		return files[0], nil
	}
	if slices.Contains(files, o.ChainInto) {
		return o.ChainInto, nil
	}
	if _, err := os.Stat(filepath.Join(o.ConfDir, o.ChainInto)); err == nil {
		return "", fmt.Errorf("--chain-into %s: the runtime does not load that file (it loads %s files)", o.ChainInto, strings.Join(confExts, ", "))
	}
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(o.ConfDir, f))
		if err != nil {
			continue
		}
		var n struct {
			Name string `json:"name"`
		}
		if json.Unmarshal(data, &n) == nil && n.Name == o.ChainInto {
			return f, nil
		}
	}
	return "", fmt.Errorf("--chain-into %s: no file and no network of that name in %s (it has: %s)", o.ChainInto, o.ConfDir, orNone(files))
}

func orNone(files []string) string {
	if len(files) == 0 {
		return "no CNI configuration"
	}
	return strings.Join(files, ", ")
}

// chainList appends weft-cni to the conflist at path.
func chainList(o Options, path string, data []byte, mode fs.FileMode, did *[]string) error {
	list, err := libcni.NetworkConfFromBytes(data)
	if err != nil {
		return fmt.Errorf("%s is not a conflist the runtime can read (%w): fix it, or point --chain-into at another", path, err)
	}
	if !slices.Contains(plugin.SupportedVersions, list.CNIVersion) {
		return fmt.Errorf("%s is for CNI %s, which weft-cni does not speak (%s): raise its cniVersion to 0.4.0 or 1.0.0, which its plugins support if they are from the last years", path, list.CNIVersion, strings.Join(plugin.SupportedVersions, ", "))
	}
	obj, err := decodeObject(data)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	plugins, ok, err := pluginsOf(obj)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if !ok || len(plugins) == 0 {
		return fmt.Errorf("%s lists no plugins inline (they are loaded from a directory): weft-cni install cannot chain into it; add {\"type\": \"weft-cni\"} after its plugins by hand", path)
	}
	var types []string
	at := -1
	for i, p := range plugins {
		if t := pluginType(p); t == plugin.Type {
			at = i
		} else if at < 0 {
			types = append(types, t)
		}
	}
	entry, err := o.entry(strings.Join(types, ", "))
	if err != nil {
		return err
	}
	backup := path + BackupSuffix
	if at >= 0 {
		// Chained before: bring the entry up to date in its place; the
		// backup, if it is ours, still holds the file as it was.
		if sameJSON(plugins[at], entry) {
			return nil
		}
		plugins[at] = entry
	} else {
		if err := writeAtomic(backup, data, mode); err != nil {
			return err
		}
		*did = append(*did, "saved "+path+" as "+backup)
		plugins = append(plugins, entry)
	}
	pl, err := json.Marshal(plugins)
	if err != nil {
		return err
	}
	out, err := indent(obj.set("plugins", pl).marshal())
	if err != nil {
		return err
	}
	if err := writeAtomic(path, out, mode); err != nil {
		return err
	}
	if at >= 0 {
		*did = append(*did, "updated weft-cni's entry in "+path)
	} else {
		*did = append(*did, fmt.Sprintf("chained weft-cni into %s (after %s)", path, strings.Join(types, ", ")))
	}
	return nil
}

// chainConf turns the single-plugin configuration at path into a conflist
// of the same stem that runs it and then weft-cni; the original is kept
// as the backup, and the runtime no longer sees it.
func chainConf(o Options, path string, data []byte, mode fs.FileMode, did *[]string) error {
	conf, err := libcni.NetworkPluginConfFromBytes(data)
	if err != nil {
		return fmt.Errorf("%s is not a network configuration the runtime can read (%w): fix it, or point --chain-into at another", path, err)
	}
	if !slices.Contains(plugin.SupportedVersions, conf.Network.CNIVersion) {
		return fmt.Errorf("%s is for CNI %q, which weft-cni does not speak (%s): set its cniVersion to 0.4.0 or 1.0.0, which its plugin supports if it is from the last years", path, conf.Network.CNIVersion, strings.Join(plugin.SupportedVersions, ", "))
	}
	obj, err := decodeObject(data)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	listPath := strings.TrimSuffix(path, filepath.Ext(path)) + ".conflist"
	if existing, err := os.ReadFile(listPath); err == nil && !holdsWeft(existing) {
		return fmt.Errorf("cannot turn %s into a conflist: %s exists and is not weft-cni's; remove one of them", path, listPath)
	}
	entry, err := o.entry(conf.Network.Type)
	if err != nil {
		return err
	}
	version, _ := obj.get("cniVersion")
	name, _ := obj.get("name")
	list := object{{"cniVersion", version}, {"name", name}}
	pl, err := json.Marshal([]json.RawMessage{obj.without("cniVersion", "name").marshal(), entry})
	if err != nil {
		return err
	}
	out, err := indent(list.set("plugins", pl).marshal())
	if err != nil {
		return err
	}
	if _, err := libcni.NetworkConfFromBytes(out); err != nil {
		return fmt.Errorf("turning %s into a conflist: %w", path, err)
	}
	backup := path + BackupSuffix
	if err := writeAtomic(backup, data, mode); err != nil {
		return err
	}
	if err := writeAtomic(listPath, out, mode); err != nil {
		return err
	}
	if _, err := removeIfExists(path); err != nil {
		return err
	}
	*did = append(*did, "saved "+path+" as "+backup, fmt.Sprintf("turned %s into %s, with weft-cni chained after %s", path, listPath, conf.Network.Type))
	return nil
}

// Uninstall removes what Install made: the binary, the primary conflist,
// and weft-cni from any conflist it was chained into (restored from the
// backup when nothing else changed in it since). Running it again changes
// nothing.
func Uninstall(binDir, confDir string) ([]string, error) {
	if binDir == "" || confDir == "" {
		return nil, errors.New("--bin-dir and --conf-dir are required (the host's CNI directories as mounted)")
	}
	var did []string
	bin := filepath.Join(binDir, plugin.Type)
	if removed, err := removeIfExists(bin); err != nil {
		return did, err
	} else if removed {
		did = append(did, "removed "+bin)
	}
	if err := removePrimary(confDir, &did); err != nil {
		return did, err
	}
	if err := restoreChained(confDir, "", &did); err != nil {
		return did, err
	}
	if len(did) == 0 {
		did = append(did, "weft-cni is not installed: nothing to remove")
	}
	return did, nil
}

// restoreChained takes weft-cni out of every configuration of confDir it
// was chained into, except keep (a file name; "" for none).
func restoreChained(confDir, keep string, did *[]string) error {
	ents, err := os.ReadDir(confDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing %s: %w", confDir, err)
	}
	for _, e := range ents {
		orig, ok := strings.CutSuffix(e.Name(), BackupSuffix)
		if !ok || e.IsDir() {
			continue
		}
		list := orig
		if ext := filepath.Ext(orig); ext != ".conflist" {
			list = strings.TrimSuffix(orig, ext) + ".conflist"
		}
		if keep != "" && (list == keep || orig == keep) {
			continue
		}
		if err := restoreOne(confDir, orig, list, did); err != nil {
			return err
		}
	}
	return nil
}

// restoreOne puts back orig from its backup. list is the conflist that
// holds weft-cni: orig itself, or the conflist a .conf was turned into.
func restoreOne(confDir, orig, list string, did *[]string) error {
	backupPath := filepath.Join(confDir, orig+BackupSuffix)
	origPath := filepath.Join(confDir, orig)
	listPath := filepath.Join(confDir, list)
	backup, err := os.ReadFile(backupPath)
	if err != nil {
		return fmt.Errorf("reading %s: %w", backupPath, err)
	}
	current, err := os.ReadFile(listPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("reading %s: %w", listPath, err)
	}
	haveCurrent := err == nil
	if list != orig {
		// A .conf turned into a conflist: drop the conflist (when it is
		// still weft-cni's) and put the .conf back.
		if haveCurrent && holdsWeft(current) {
			if _, err := removeIfExists(listPath); err != nil {
				return err
			}
			*did = append(*did, "removed "+listPath)
		}
		if _, err := os.Stat(origPath); err == nil {
			// Its owner wrote the .conf again meanwhile: theirs wins.
			if _, err := removeIfExists(backupPath); err != nil {
				return err
			}
			*did = append(*did, fmt.Sprintf("kept %s as its owner rewrote it; removed %s", origPath, backupPath))
			return nil
		}
		return renameBack(backupPath, origPath, did)
	}
	switch {
	case !haveCurrent:
		return renameBack(backupPath, origPath, did)
	case !holdsWeft(current):
		// Rewritten since by its owner (a network plugin's own installer
		// writes its file when it starts): that is the file to keep.
		if _, err := removeIfExists(backupPath); err != nil {
			return err
		}
		*did = append(*did, fmt.Sprintf("kept %s (rewritten since weft-cni was chained into it, without weft-cni); removed %s", origPath, backupPath))
		return nil
	}
	stripped, err := withoutWeft(current)
	if err != nil {
		return fmt.Errorf("%s: %w", listPath, err)
	}
	if sameJSON(stripped, backup) {
		return renameBack(backupPath, origPath, did)
	}
	// Changed in other ways since: keep those changes, drop weft-cni.
	fi, err := os.Stat(origPath)
	if err != nil {
		return err
	}
	if err := writeAtomic(origPath, stripped, fi.Mode().Perm()); err != nil {
		return err
	}
	if _, err := removeIfExists(backupPath); err != nil {
		return err
	}
	*did = append(*did, fmt.Sprintf("removed weft-cni from %s (changed since it was chained in, so not restored from %s)", origPath, backupPath))
	return nil
}

func renameBack(backupPath, origPath string, did *[]string) error {
	if err := os.Rename(backupPath, origPath); err != nil {
		return fmt.Errorf("restoring %s from %s: %w", origPath, backupPath, err)
	}
	if err := syncDir(filepath.Dir(origPath)); err != nil {
		return err
	}
	*did = append(*did, "restored "+origPath+" from "+backupPath)
	return nil
}

// withoutWeft is the conflist data without its weft-cni entries.
func withoutWeft(data []byte) ([]byte, error) {
	obj, err := decodeObject(data)
	if err != nil {
		return nil, err
	}
	plugins, _, err := pluginsOf(obj)
	if err != nil {
		return nil, err
	}
	plugins = slices.DeleteFunc(plugins, func(p json.RawMessage) bool { return pluginType(p) == plugin.Type })
	pl, err := json.Marshal(plugins)
	if err != nil {
		return nil, err
	}
	return indent(obj.set("plugins", pl).marshal())
}
