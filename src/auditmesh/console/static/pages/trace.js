import { h } from "../dom.js";

export async function renderTrace(main) {
  main.append(h("h1", {}, "trace"));
}
