import { h } from "../dom.js";

export async function renderGraph(main) {
  main.append(h("h1", {}, "graph"));
}
