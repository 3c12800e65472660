// A Go program that finds its own file the way self-updating and re-executing programs do:
// os.Executable, then runs itself again through it. In the corpus (tests/corpus/build.sh) to
// check that build.rs recognises such a program and that it works from the cache runner.
package main

import (
	"fmt"
	"os"
	"os/exec"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "child" {
		fmt.Println("child ran")
		return
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "os.Executable:", err)
		os.Exit(3)
	}
	out, err := exec.Command(exe, "child").Output()
	if err != nil {
		fmt.Fprintf(os.Stderr, "re-run through os.Executable (%s): %v\n", exe, err)
		os.Exit(4)
	}
	fmt.Printf("re-ran itself: %s", out)
}
