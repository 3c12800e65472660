// A Go program that names os.Executable only in a string: it does not link the function, so
// build.rs must leave it on the memfd runner.
package main

import "fmt"

func main() {
	fmt.Println("os.Executable is only a string here")
}
